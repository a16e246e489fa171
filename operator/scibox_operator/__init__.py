"""SciBox vLLM operator: reconciles VLLMDeployment resources into vLLM model servers."""

GROUP = "scibox.io"
VERSION = "v1alpha1"
PLURAL = "vllmdeployments"
KIND = "VLLMDeployment"
FIELD_MANAGER = "scibox-vllm-operator"
