"""The application: the engine that drives tasks, the dispatcher, intake."""
