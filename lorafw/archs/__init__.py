"""The model families lorafw ships, one package each (sd15, sdxl), and the protocol every family implements
(protocol.py). Families are found by name through lorafw/families.py, the entry-point registry, never imported
directly by the trainer."""
