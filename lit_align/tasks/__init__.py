"""Built-in tasks: generators of records plus their verifiers."""
