"""Target backends: deploy a firmware image and hand back a serial link to it."""
