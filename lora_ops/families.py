def layout_of(shapes):
    return []
