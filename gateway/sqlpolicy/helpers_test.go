package sqlpolicy

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// nodeOneofStmtFields builds one empty Node per statement kind the grammar
// knows, keyed by message name.
func nodeOneofStmtFields() map[string]*pg_query.Node {
	out := map[string]*pg_query.Node{}
	desc := (&pg_query.Node{}).ProtoReflect().Descriptor()
	fields := desc.Oneofs().Get(0).Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		md := fd.Message()
		if md == nil || !strings.HasSuffix(string(md.Name()), "Stmt") {
			continue
		}
		n := &pg_query.Node{}
		m := n.ProtoReflect()
		m.Set(fd, protoreflect.ValueOfMessage(m.NewField(fd).Message()))
		out[string(md.Name())] = n
	}
	return out
}
