"""callq-nats"""
