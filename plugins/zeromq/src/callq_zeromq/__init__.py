"""callq-zeromq"""
