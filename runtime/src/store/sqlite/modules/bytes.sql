SELECT bytes FROM modules WHERE digest = ?1
