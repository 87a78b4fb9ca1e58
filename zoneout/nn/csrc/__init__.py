"""The C++ CPU kernels and their build: the sources (*.cpp, cpu_common.h), cpu_ext.py (compile on first
use into a per-environment cache, load, fall back to PyTorch-op kernels where the build fails) and
cpu_build.py (the child process that compiles). Imports only torch: the layers above (zoneout.nn.fused,
the CPU mask sampler in zoneout.nn.counter_masks) load the compiled modules from here."""
