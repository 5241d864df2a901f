"""Training the distiller: cold-start SFT (SPEC stage 7) and GRPO (stage 8) with TRL.

Heavy libraries (torch, transformers, trl, peft) load when a run starts, not on import.
"""
