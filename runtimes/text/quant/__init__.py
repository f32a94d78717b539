"""Weight-only quantized weights: GGUF's formats kept as the file stores them, and the layers that compute with them.

- ``formats``: ``QuantizedTensor`` (the layout the kernels read) and its pure-torch dequantization, the reference.
- ``gguf_blocks``: GGUF tensors (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) repacked into that layout, exactly.
- ``quantize``: float weights (a safetensors checkpoint) quantized at load, int8 or int4.
- ``layers``: ``QuantLinear`` and ``QuantEmbedding``, and the measured choice between the streaming kernel and a
  dense matmul on dequantized weights.
"""
