-- Gives a controller's worker id back.
-- ARGV: prefix, owner -> 1.
release_controller(ARGV[2])
return 1
