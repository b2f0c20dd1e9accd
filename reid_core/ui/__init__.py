"""The search page (`reid ui`): find a person across a gallery from a photo, compare the
registered models, browse the evaluation reports. A front end: it wires serving (embedders,
gallery indexes), tracking (the registry) and the evaluation reports to HTTP."""
