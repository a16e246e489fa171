"""One pass for one VLLMDeployment: observe -> plan -> desired children and status -> apply."""
