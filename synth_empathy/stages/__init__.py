"""The method's stages, one module each: a pure row/batch function and a thin Ray Data
wrapper that declares the columns it requires and the schema it produces."""
