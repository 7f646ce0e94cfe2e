"""Model compression: `vlmserve lite auto_awq` (AWQ 4-bit weights, layer by layer).

vlmserve.lite.auto_awq holds the entry points (AwqOptions, prepare, quantize, auto_awq)."""
