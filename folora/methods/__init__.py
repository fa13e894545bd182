"""The method API: the `Method` interface every fine-tuning method implements, building a method from its YAML, and
checking its options against what its class accepts."""
