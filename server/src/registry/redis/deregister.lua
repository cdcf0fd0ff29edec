-- Removes a node that gives its lease up.
-- ARGV: prefix, node -> {node, hb, unpub, offline users...} or {}.
return remove(ARGV[2]) or {}
