package format

// ParsePGVersion parses a PG_VERSION file ("17\n") the way pg_combinebackup's
// read_pg_version_file does (a number right before a newline) and returns the
// major version.
func ParsePGVersion(data []byte, path string) (int, error) {
	v, rest, ok := scanUint(data, 10)
	if ok && len(rest) > 0 && rest[0] == '\n' && v < 1<<31 {
		return int(v), nil
	}
	if ok && v < 10 && len(rest) > 0 && rest[0] == '.' {
		return 0, errorf(path, 0, "%s: server version too old", path)
	}
	return 0, errorf(path, 0, "%s: could not parse version number", path)
}
