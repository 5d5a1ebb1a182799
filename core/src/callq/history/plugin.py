default_plugin = object()
