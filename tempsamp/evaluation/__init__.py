"""TimeLens-Bench evaluation: bench files -> predictions -> R1@0.3/0.5/0.7 and mIoU per dataset."""
