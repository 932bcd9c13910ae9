"""The model seam: a chat-model handle for every provider, and the embedded llama.cpp one."""
