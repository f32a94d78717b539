"""Functions: named, typed units of work that run on the bus like any model (``ember worker functions``).

``registry`` holds what a worker serves (built-ins from ``builtins``, user modules from ``loader``); ``worker``
runs ``FunctionJob``s; ``catalog`` publishes and reads their declarations; ``caller`` is the gateway's side of
one call; ``jobs`` keeps asynchronous invocations' state.
"""
