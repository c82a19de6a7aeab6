"""Applications of slices and sensitivities: adversarial-input detection, model protection, fault tolerance."""
