// A small stand-in for Flamenco Manager's job-compiler environment, to test a job type with Node.
//
//   node flamenco_author.js JOB_TYPE.js SETTINGS.json
//
// Loads the job type script the way the Manager does (a script defining JOB_TYPE and
// compileJob, with `author`, `path` and `print` provided), fills in the settings' defaults,
// checks the required ones, compiles the job and prints its tasks as JSON on stdout:
//   {"label": ..., "tasks": [{"name", "type", "commands": [{"name", "parameters"}], "dependencies": [names]}]}
// A compile error (the script throws) is printed on stderr with exit code 1.
"use strict";

const fs = require("fs");
const path = require("path");
const vm = require("vm");

function makeAuthor() {
    return {
        Task(name, type) {
            const task = { name, type, commands: [], dependencies: [] };
            return {
                _task: task,
                addCommand(command) { task.commands.push(command); },
                addDependency(other) {
                    if (!other || !other._task) throw new Error("addDependency takes a task made by author.Task");
                    task.dependencies.push(other._task.name);
                },
            };
        },
        Command(name, parameters) {
            return { name, parameters };
        },
    };
}

function main() {
    const [scriptPath, settingsPath] = process.argv.slice(2);
    const source = fs.readFileSync(scriptPath, "utf8");
    const settings = JSON.parse(fs.readFileSync(settingsPath, "utf8"));
    const printed = [];
    const context = vm.createContext({
        author: makeAuthor(),
        path: path.posix, // the Manager's path helpers work on forward-slash paths
        print: (...args) => printed.push(args.join(" ")),
    });
    // Top-level const/function declarations of a script are reachable from its last expression.
    const { JOB_TYPE, compileJob } = vm.runInContext(`${source}\n;({ JOB_TYPE, compileJob })`, context, {
        filename: path.basename(scriptPath),
    });

    for (const setting of JOB_TYPE.settings) {
        if (!(setting.key in settings) && "default" in setting) settings[setting.key] = setting.default;
        if (setting.required && (settings[setting.key] === undefined || settings[setting.key] === "")) {
            throw new Error(`required setting "${setting.key}" is missing`);
        }
        if (setting.choices && setting.key in settings && setting.choices.indexOf(settings[setting.key]) < 0) {
            throw new Error(`setting "${setting.key}" must be one of ${setting.choices.join(", ")}`);
        }
    }
    const tasks = [];
    const job = {
        settings,
        addTask(task) { tasks.push(task._task); },
    };
    compileJob(job);
    process.stdout.write(JSON.stringify({ label: JOB_TYPE.label, printed, tasks }, null, 2));
}

try {
    main();
} catch (error) {
    process.stderr.write(`compile error: ${error && error.message ? error.message : error}\n`);
    process.exit(1);
}
