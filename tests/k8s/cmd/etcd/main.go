// Command etcd is the upstream etcd server, built at the version the
// Kubernetes release in go.mod depends on, so the two are known to work together.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
