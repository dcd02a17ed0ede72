"""The NMT library: params schema, data, tokenizer, model, training, decoding, scoring."""
