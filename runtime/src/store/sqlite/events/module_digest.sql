SELECT digest FROM module_names WHERE name = ?1
