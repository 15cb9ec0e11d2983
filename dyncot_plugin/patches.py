"""placeholder, replaced below"""
def apply_patches(force=False):
    pass
