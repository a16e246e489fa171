"""Pure `spec -> manifests` functions, one module per child resource. No I/O here."""
