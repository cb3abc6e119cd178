package mysql

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"strconv"

	"github.com/sigilhq/sigil/audit"
)

// Column types of the binary protocol.
const (
	typeDecimal    = 0x00
	typeTiny       = 0x01
	typeShort      = 0x02
	typeLong       = 0x03
	typeFloat      = 0x04
	typeDouble     = 0x05
	typeNull       = 0x06
	typeTimestamp  = 0x07
	typeLongLong   = 0x08
	typeInt24      = 0x09
	typeDate       = 0x0a
	typeTime       = 0x0b
	typeDateTime   = 0x0c
	typeYear       = 0x0d
	typeVarchar    = 0x0f
	typeBit        = 0x10
	typeJSON       = 0xf5
	typeNewDecimal = 0xf6
	typeEnum       = 0xf7
	typeSet        = 0xf8
	typeTinyBlob   = 0xf9
	typeMediumBlob = 0xfa
	typeLongBlob   = 0xfb
	typeBlob       = 0xfc
	typeVarString  = 0xfd
	typeString     = 0xfe
	typeGeometry   = 0xff
)

// decodeExecuteParams renders the parameters of a COM_STMT_EXECUTE
// payload (or its first len(p) bytes of total) for the audit log:
// numbers and strings as text, other values as hex, each bounded, at most
// audit.MaxParameters. It updates st.types when the command binds new
// types. It never fails: what cannot be decoded is marked.
func decodeExecuteParams(p []byte, st *stmt, total int) []string {
	// command(1) stmt_id(4) flags(1) iteration_count(4)
	const head = 10
	n := st.numParams
	if n == 0 || len(p) < head {
		return nil
	}
	p = p[head:]
	nullLen := (n + 7) / 8
	if len(p) < nullLen+1 {
		return []string{notRecorded(total)}
	}
	nulls := p[:nullLen]
	p = p[nullLen:]
	bound := p[0]
	p = p[1:]
	if bound == 1 {
		if len(p) < 2*n {
			return []string{notRecorded(total)}
		}
		st.types = append(st.types[:0], p[:2*n]...)
		p = p[2*n:]
	}
	if len(st.types) != 2*n {
		return []string{"…[parameter types not known]"}
	}
	out := make([]string, 0, min(n, audit.MaxParameters+1))
	for i := range n {
		if len(out) == audit.MaxParameters {
			out = append(out, fmt.Sprintf("…[%d more parameters]", n-i))
			break
		}
		if nulls[i/8]&(1<<(i%8)) != 0 {
			out = append(out, "NULL")
			continue
		}
		v, rest, ok := decodeValue(p, st.types[2*i], st.types[2*i+1]&0x80 != 0)
		if !ok {
			out = append(out, notRecorded(total))
			break
		}
		out = append(out, v)
		p = rest
	}
	return out
}

func notRecorded(total int) string {
	return fmt.Sprintf("…[parameters not recorded: COM_STMT_EXECUTE of %d bytes]", total)
}

// decodeValue decodes one binary-protocol value of type t.
func decodeValue(p []byte, t byte, unsigned bool) (string, []byte, bool) {
	fixed := func(size int) ([]byte, []byte, bool) {
		if len(p) < size {
			return nil, nil, false
		}
		return p[:size], p[size:], true
	}
	switch t {
	case typeNull:
		return "NULL", p, true
	case typeTiny:
		v, rest, ok := fixed(1)
		if !ok {
			return "", nil, false
		}
		if unsigned {
			return strconv.FormatUint(uint64(v[0]), 10), rest, true
		}
		return strconv.FormatInt(int64(int8(v[0])), 10), rest, true
	case typeShort, typeYear:
		v, rest, ok := fixed(2)
		if !ok {
			return "", nil, false
		}
		u := binary.LittleEndian.Uint16(v)
		if unsigned || t == typeYear {
			return strconv.FormatUint(uint64(u), 10), rest, true
		}
		return strconv.FormatInt(int64(int16(u)), 10), rest, true
	case typeLong, typeInt24:
		v, rest, ok := fixed(4)
		if !ok {
			return "", nil, false
		}
		u := binary.LittleEndian.Uint32(v)
		if unsigned {
			return strconv.FormatUint(uint64(u), 10), rest, true
		}
		return strconv.FormatInt(int64(int32(u)), 10), rest, true
	case typeLongLong:
		v, rest, ok := fixed(8)
		if !ok {
			return "", nil, false
		}
		u := binary.LittleEndian.Uint64(v)
		if unsigned {
			return strconv.FormatUint(u, 10), rest, true
		}
		return strconv.FormatInt(int64(u), 10), rest, true
	case typeFloat:
		v, rest, ok := fixed(4)
		if !ok {
			return "", nil, false
		}
		return strconv.FormatFloat(float64(math.Float32frombits(binary.LittleEndian.Uint32(v))), 'g', -1, 32), rest, true
	case typeDouble:
		v, rest, ok := fixed(8)
		if !ok {
			return "", nil, false
		}
		return strconv.FormatFloat(math.Float64frombits(binary.LittleEndian.Uint64(v)), 'g', -1, 64), rest, true
	case typeDate, typeDateTime, typeTimestamp:
		if len(p) < 1 || len(p) < 1+int(p[0]) {
			return "", nil, false
		}
		v, rest := p[1:1+int(p[0])], p[1+int(p[0]):]
		return renderDateTime(v, t == typeDate), rest, true
	case typeTime:
		if len(p) < 1 || len(p) < 1+int(p[0]) {
			return "", nil, false
		}
		v, rest := p[1:1+int(p[0])], p[1+int(p[0]):]
		return renderTime(v), rest, true
	case typeVarchar, typeVarString, typeString, typeDecimal, typeNewDecimal, typeJSON, typeEnum, typeSet:
		v, rest, ok := readLenencBytes(p)
		if !ok {
			return "", nil, false
		}
		return renderString(v), rest, true
	case typeBit, typeTinyBlob, typeMediumBlob, typeLongBlob, typeBlob, typeGeometry:
		v, rest, ok := readLenencBytes(p)
		if !ok {
			return "", nil, false
		}
		return renderString(v), rest, true
	}
	return "", nil, false
}

func renderDateTime(v []byte, dateOnly bool) string {
	switch len(v) {
	case 0:
		if dateOnly {
			return "0000-00-00"
		}
		return "0000-00-00 00:00:00"
	case 4, 7, 11:
	default:
		return renderHex(v)
	}
	s := fmt.Sprintf("%04d-%02d-%02d", binary.LittleEndian.Uint16(v), v[2], v[3])
	if dateOnly && len(v) == 4 {
		return s
	}
	if len(v) == 4 {
		return s + " 00:00:00"
	}
	s += fmt.Sprintf(" %02d:%02d:%02d", v[4], v[5], v[6])
	if len(v) == 11 {
		s += fmt.Sprintf(".%06d", binary.LittleEndian.Uint32(v[7:]))
	}
	return s
}

func renderTime(v []byte) string {
	switch len(v) {
	case 0:
		return "00:00:00"
	case 8, 12:
	default:
		return renderHex(v)
	}
	sign := ""
	if v[0] == 1 {
		sign = "-"
	}
	days := binary.LittleEndian.Uint32(v[1:])
	s := fmt.Sprintf("%s%02d:%02d:%02d", sign, uint64(days)*24+uint64(v[5]), v[6], v[7])
	if len(v) == 12 {
		s += fmt.Sprintf(".%06d", binary.LittleEndian.Uint32(v[8:]))
	}
	return s
}

// renderHex renders bytes as \x… bounded to audit.MaxParameterBytes.
func renderHex(v []byte) string {
	const suffix = "…[truncated]"
	limit := (audit.MaxParameterBytes - 2) / 2
	if len(v) > limit {
		return `\x` + hex.EncodeToString(v[:limit-len(suffix)/2]) + suffix
	}
	return `\x` + hex.EncodeToString(v)
}
