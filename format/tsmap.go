package format

import (
	"errors"
	"fmt"
	"strings"
)

// maxPGPath is MAXPGPATH, the tools' limit on a mapped directory's name.
const maxPGPath = 1024

// SplitTablespaceMapping splits a -T OLDDIR=NEWDIR argument the way
// pg_basebackup (tablespace_list_append) and pg_combinebackup
// (add_tablespace_mapping) both do: \= is a literal =; a second = is
// refused only once the new directory has begun, so "/a==/b" maps /a to
// /b; a directory name of MAXPGPATH bytes or more is refused, as is an
// empty side. Whether the directories are absolute is the caller's check
// (the two tools word it differently).
func SplitTablespaceMapping(arg string) (old, new string, err error) {
	var b [2]strings.Builder
	side := 0
	for i := 0; i < len(arg); i++ {
		if b[side].Len() >= maxPGPath {
			return "", "", errors.New("directory name too long")
		}
		switch {
		case arg[i] == '\\' && i+1 < len(arg) && arg[i+1] == '=':
			// skip the backslash escaping =
		case arg[i] == '=' && (i == 0 || arg[i-1] != '\\'):
			if b[1].Len() > 0 {
				return "", "", errors.New(`multiple "=" signs in tablespace mapping`)
			}
			side = 1
		default:
			b[side].WriteByte(arg[i])
		}
	}
	old, new = b[0].String(), b[1].String()
	if old == "" || new == "" {
		return "", "", fmt.Errorf("invalid tablespace mapping format %q, must be \"OLDDIR=NEWDIR\"", arg)
	}
	return old, new, nil
}
