"""I/O and state: the API client, the watch store, the work queue, leader election, Secrets."""
