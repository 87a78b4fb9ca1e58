"""The fused layers' switches, for benchmarks and GPU tuning: `zoneout.nn.fused.options` is this dict
(set a key to change what every fused layer does from its next call on). The defaults are what the
layers use."""
from __future__ import annotations

#   cpu_kernels: "auto" (C++ if it builds, else "torch"), "cpp" (error if it cannot build) or "torch".
#                (TorchScript / torch.compile kernels were measured and removed: results/bench_cpu_options_amd.md.)
#                GRU / RNN layers run C++ under "auto" / "cpp" and their reference loops under "torch";
#                the recurrent-BN LSTM (bn_lstm_function.py) its C++ or its PyTorch-op kernels alike.
#   cpu_gemm:    which library runs the C++ LSTM kernels' float32 GEMMs (cpu_gemm.py): "mkl", "onednn" (all
#                of the layer's GEMMs) or "auto" (cpu_gemm.default_cpu_gemm(H): per CPU vendor and width, as
#                measured). float64, the other kernel choices and the GRU / RNN layers stay on MKL.
#   gpu_kernels: "auto" (Triton if importable, else "torch"), "triton" or "torch".
#   cuda_graphs: capture each step loop in a CUDA graph (Triton path; see cuda_graphs.py). Off until
#                scripts/bench.py --device cuda shows the eager path launch-bound on a GPU.
#   gemm_dtype:  None (the input's dtype) or torch.bfloat16 for the recurrent GEMM on CUDA: bf16 operands,
#                fp32 accumulate and output (an error where cuBLAS has no such GEMM); cell state stays fp32.
#   reuse_buffers: on the CPU the input projection and the C++ kernels' forward results (output, saved tensors)
#                go into pooled blocks (buffers.py) rather than fresh ones (backward workspaces are pooled always).
options = {"cpu_kernels": "auto", "cpu_gemm": "auto", "gpu_kernels": "auto", "cuda_graphs": False,
           "gemm_dtype": None, "reuse_buffers": True}
