// argocd-health runs an Argo CD resource health script the way Argo CD's controller does
// (util/lua, runLua + ExecuteHealthLua): gopher-lua, a fresh state per object, only the
// package, base and table libraries unless -open-libs (argocd-cm
// resource.customizations.useOpenLibs.<group_kind>: "true"), the object as the global `obj`
// (JSON numbers as Lua numbers, arrays as 1-based tables, null as nil), a 1 s deadline, and the
// returned table's status checked against Argo CD's health codes.
//
//	argocd-health [-open-libs] health.lua object.json   ->  {"status": "...", "message": "..."}
//
// Exit 1 when the script fails or returns no table (Argo CD then reports the error).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
)

var healthCodes = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true, "Healthy": true, "Degraded": true, "Missing": true,
}

func decode(l *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case []interface{}:
		arr := l.CreateTable(len(v), 0)
		for _, item := range v {
			arr.Append(decode(l, item))
		}
		return arr
	case map[string]interface{}:
		tbl := l.CreateTable(0, len(v))
		for key, item := range v {
			tbl.RawSetH(lua.LString(key), decode(l, item))
		}
		return tbl
	}
	return lua.LNil
}

func run(scriptPath, objectPath string, openLibs bool) (map[string]string, error) {
	script, err := os.ReadFile(scriptPath)
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(objectPath)
	if err != nil {
		return nil, err
	}
	var obj map[string]interface{}
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, fmt.Errorf("object: %w", err)
	}
	l := lua.NewState(lua.Options{SkipOpenLibs: !openLibs})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", decode(l, obj))
	if err := l.DoString(string(script)); err != nil {
		return nil, err
	}
	ret, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return nil, fmt.Errorf("expect table output from Lua script, not %s", l.Get(-1).Type())
	}
	out := map[string]string{"status": lua.LVAsString(ret.RawGetString("status")),
		"message": lua.LVAsString(ret.RawGetString("message"))}
	if !healthCodes[out["status"]] {
		out = map[string]string{"status": "Unknown", "message": "Lua returned an invalid health status"}
	}
	return out, nil
}

func main() {
	openLibs := flag.Bool("open-libs", false, "open every standard library (resource.customizations.useOpenLibs)")
	flag.Parse()
	if flag.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage: argocd-health [-open-libs] health.lua object.json")
		os.Exit(2)
	}
	out, err := run(flag.Arg(0), flag.Arg(1), *openLibs)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(1)
	}
}
