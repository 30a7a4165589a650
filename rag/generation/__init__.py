"""Generation: prompts, exact packing of sources into the model's window, the answer chain, and citation
checking."""
