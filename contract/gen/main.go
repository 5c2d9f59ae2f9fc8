// Command gen writes the AsyncAPI document of memworker's wire contract
// and the sample accounts config (go generate ./contract).
package main

import (
	"flag"
	"log"
	"os"

	"github.com/memworker/memworker/contract"
	"github.com/memworker/memworker/worker"
)

func main() {
	root := flag.String("root", ".", "the module's root folder")
	out := flag.String("out", contract.Path, "the document, relative to the root")
	flag.Parse()
	if err := os.Chdir(*root); err != nil {
		log.Fatal(err)
	}
	doc, err := contract.Document(worker.Version)
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*out, doc, 0o644); err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(contract.AccountsPath, contract.Accounts(contract.SampleTenants), 0o644); err != nil {
		log.Fatal(err)
	}
}
