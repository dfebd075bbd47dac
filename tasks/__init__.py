"""tailcal core: stage functions with typed inputs and outputs, free of Prefect and MLflow."""
