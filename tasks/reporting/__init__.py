"""What a run shows people: the markdown report (`report`), PNG plots (`plots`) and the
ablation table (`ablation_table`)."""
