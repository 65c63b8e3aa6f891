"""The incubator's kernel data path: the XDP program, the DiCAP eBPF socket filter and their control plane."""
