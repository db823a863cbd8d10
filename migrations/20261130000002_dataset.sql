-- Which dataset a project was imported from (e.g. "amazon-games (recbole)"), named in
-- report titles; null for projects filled through the API only.
ALTER TABLE projects ADD COLUMN dataset text;
