module github.com/sigilhq/sigil/api

go 1.26.8

require (
	connectrpc.com/connect v1.21.1
	github.com/gravitational/trace v1.5.4
	google.golang.org/protobuf v1.36.12
	gopkg.in/yaml.v3 v3.0.1
)
