package sqlpolicy

// Statements sent with the simple query protocol (psql, pgbench -M simple,
// most MySQL drivers without server-side prepare) carry their values as
// literals, so the text differs on every call and a cache keyed by text
// never hits: each query pays a full parse. shapeKey lets statements that
// differ only in standalone numeric literals share one cache entry.
//
// That is sound only where a number cannot change the classification. The
// classifiers read literal values in two places: EXPLAIN options
// (ANALYZE 0) and SET values (a character set by number). shapeKey
// therefore keys only texts that start with SELECT, INSERT, UPDATE,
// DELETE or WITH, and contain no quote, dollar, backslash, comment,
// hash or inner semicolon, so that every digit run it replaces is a
// numeric literal token and not part of a string, identifier or
// parameter. Any other text is keyed by itself, as before.

// shapePlaceholder stands for a numeric literal; no statement text holds
// a NUL byte (shapeKey refuses those), so keys of both kinds never meet.
const shapePlaceholder = '\x00'

// maxShapeDigits is the longest number replaced: any run of at most 18
// digits fits an int64, so every parser reads all of them alike; MySQL's
// fails on some longer ones.
const maxShapeDigits = 18

// shapeVerbs are the statements whose texts are keyed by shape.
var shapeVerbs = []string{"select", "insert", "update", "delete", "with"}

// shapeKey returns the cache key of sql: sql itself, or with every
// standalone digit run replaced by shapePlaceholder.
func shapeKey(sql string) string {
	if !shapeable(sql) {
		return sql
	}
	var out []byte
	copied := 0 // sql[:copied] is in out
	for i := 0; i < len(sql); {
		if !isDigit(sql[i]) || (i > 0 && isIdentByte(sql[i-1])) {
			i++
			continue
		}
		j := i
		for j < len(sql) && isDigit(sql[j]) {
			j++
		}
		if j < len(sql) && isIdentByte(sql[j]) || j-i > maxShapeDigits {
			// 1e5, 0x1F, or MySQL's 1abc: not a plain number token; or a
			// number long enough that a parser may treat it differently.
			i = j
			continue
		}
		if out == nil {
			out = make([]byte, 0, len(sql))
		}
		out = append(out, sql[copied:i]...)
		out = append(out, shapePlaceholder)
		copied, i = j, j
	}
	if out == nil {
		return sql
	}
	return string(append(out, sql[copied:]...))
}

// shapeable reports whether sql may be keyed by shape (see the top of
// this file).
func shapeable(sql string) bool {
	start := 0
	for start < len(sql) && isSpace(sql[start]) {
		start++
	}
	verb := false
	for _, v := range shapeVerbs {
		if len(sql)-start > len(v) && equalFoldASCII(sql[start:start+len(v)], v) && !isIdentByte(sql[start+len(v)]) {
			verb = true
			break
		}
	}
	if !verb {
		return false
	}
	end := len(sql)
	for end > start && isSpace(sql[end-1]) {
		end--
	}
	if end > start && sql[end-1] == ';' {
		end--
	}
	for i := start; i < end; i++ {
		switch c := sql[i]; c {
		case '\'', '"', '`', '$', '\\', '#', ';', 0:
			return false
		case '-', '/':
			if i+1 < end && (sql[i+1] == c || c == '/' && sql[i+1] == '*') {
				return false
			}
		}
	}
	return true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// isIdentByte reports whether c can continue an identifier or number:
// ASCII letters, digits, underscore, and any byte of a non-ASCII character.
func isIdentByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || isDigit(c) || c == '_' || c >= 0x80
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

func equalFoldASCII(s, lower string) bool {
	for i := 0; i < len(lower); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}
