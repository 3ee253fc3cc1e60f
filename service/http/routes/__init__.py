"""HTTP routes, thin: validate, convert, call the runtime, wrap the result."""
