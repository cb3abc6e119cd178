package web

import (
	"errors"
	"net/http"
	"sort"
	"strings"

	"connectrpc.com/connect"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
)

type resourcesData struct {
	Databases []dbRow
	Nodes     []nodeRow
}

type dbRow struct {
	Name, Protocol, Description string
	Labels, DBUsers             []string
	Command                     string
}

type nodeRow struct {
	Name, Addr, Description string
	Labels, Logins          []string
	Command                 string
}

func labelList(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// plainName is the one entry of list that is a name, not a pattern, when
// there is exactly one: it can go into a command as is.
func plainName(list []string) string {
	var plain []string
	for _, s := range list {
		if s != "" && !strings.ContainsAny(s, "*?[{") {
			plain = append(plain, s)
		}
	}
	if len(plain) == 1 {
		return plain[0]
	}
	if len(plain) > 1 {
		return plain[0]
	}
	return ""
}

func (h *Handler) resourcesPage(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	ctx := h.as(r, s)
	dbs, err := h.console.api.databases.ListDatabases(ctx, connect.NewRequest(&sigilv1.ListDatabasesRequest{}))
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	d := &resourcesData{}
	list := dbs.Msg.Databases
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	for _, db := range list {
		cmd := "sigil db connect " + db.Name
		if u := plainName(db.DbUsers); u != "" {
			cmd += " --db-user " + u
		} else {
			cmd += " --db-user USER"
		}
		d.Databases = append(d.Databases, dbRow{Name: db.Name, Protocol: db.Protocol, Description: db.Description,
			Labels: labelList(db.Labels), DBUsers: db.DbUsers, Command: cmd})
	}
	// Servers show when this gateway serves SSH.
	nodes, err := h.console.api.nodes.ListNodes(ctx, connect.NewRequest(&sigilv1.ListNodesRequest{}))
	var ce *connect.Error
	switch {
	case err == nil:
		ns := nodes.Msg.Nodes
		sort.Slice(ns, func(i, j int) bool { return ns[i].Name < ns[j].Name })
		for _, n := range ns {
			cmd := "sigil ssh " + n.Name
			if l := plainName(n.Logins); l != "" {
				cmd = "sigil ssh " + l + "@" + n.Name
			}
			d.Nodes = append(d.Nodes, nodeRow{Name: n.Name, Addr: n.Addr, Description: n.Description,
				Labels: labelList(n.Labels), Logins: n.Logins, Command: cmd})
		}
	case errors.As(err, &ce) && ce.Code() == connect.CodeUnimplemented:
	default:
		h.cfg.Logger.Warn("Listing nodes for the console failed.", "error", err)
	}
	h.renderPage(w, http.StatusOK, "resources", &view{Title: "Resources", Nav: "resources", Session: s, Data: d})
}
