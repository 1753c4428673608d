"""greenfork metrics: shared-memory slots and their exposition. Imports neither master nor workers."""
