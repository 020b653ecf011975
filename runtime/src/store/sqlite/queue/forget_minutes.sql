DELETE FROM node_minutes WHERE minute < ?1
