"""crossmodal: Contrastive Representation Distillation (Tian, Krishnan, Isola, ICLR 2020) as a tool."""

__version__ = "0.1.0"
