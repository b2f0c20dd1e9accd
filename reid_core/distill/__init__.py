"""Knowledge distillation: a small student learns from a frozen teacher."""
