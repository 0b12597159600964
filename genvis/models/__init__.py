"""Model families: one file each, a Linen Module plus a table of named variants."""
