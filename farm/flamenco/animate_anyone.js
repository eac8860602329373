// SPDX-License-Identifier: Apache-2.0
//
// Animate Anyone: a Flamenco custom job type.
//
// Compiles one shot (the .blend submitted from Blender) - or a list of shots - into three
// tasks per shot:
//
//   export    Blender, any worker:  writes the shot's job folder with the add-on's cli.py
//             (blender -b SHOT.blend -P cli.py -- --out JOB --export-only ...)
//   generate  the backend's Python, on workers that run the "gpu" task type:
//             python -m animate_backend run JOB
//   import    Blender, any worker:  brings the video into the shot as a camera plane and
//             saves a copy beside it, SHOT_animate.blend (the shot itself is left untouched)
//
// Each task waits for the one before it of the same shot; shots do not wait for each other.
// Job folders live in `job_root` (default: `animate_jobs/` beside each shot), which must be on
// the farm's shared storage.
//
// Installation: copy this file into the `scripts/` folder beside the Flamenco Manager
// executable and restart the Manager. GPU workers list "gpu" in flamenco-worker.yaml's
// task_types (e.g. [blender, gpu, file-management, misc]); the others leave it out.

const JOB_TYPE = {
    label: "Animate Anyone",
    description: "Generate an Animate Anyone video of the shot's armature motion and import it",
    settings: [
        // Filled in by the Flamenco add-on when submitting.
        { key: "blendfile", type: "string", required: true, visible: "web",
          description: "The shot's .blend file" },
        { key: "frames", type: "string", required: true, visible: "submission",
          eval: "f'{C.scene.frame_start}-{C.scene.frame_end}'",
          evalInfo: { showLinkButton: true, description: "Scene frame range" },
          description: "Frame range, e.g. 1-48" },

        // Where things are on the workers.
        { key: "model", type: "string", subtype: "dir_path", required: true, visible: "submission",
          description: "The Animate Anyone pipeline folder, as the GPU workers see it" },
        { key: "addon_cli", type: "string", subtype: "file_path", required: true, visible: "submission",
          description: "The add-on's cli.py as the workers see it "
                     + "(e.g. .../extensions/user_default/animate_anyone/cli.py)" },
        { key: "backend_python", type: "string", subtype: "file_path", required: true, visible: "submission",
          default: "python",
          description: "The Python of the backend environment on the GPU workers (with torch and animate_backend)" },
        { key: "job_root", type: "string", subtype: "dir_path", required: false, visible: "submission",
          description: "Folder of the job folders, one per shot (default: animate_jobs/ beside each shot)" },
        { key: "extra_shots", type: "string", required: false, visible: "submission",
          description: "More shots to run with the same settings: .blend paths separated by ';'" },

        // Generation.
        { key: "size", type: "string", required: false, visible: "submission",
          description: "Output size WIDTHxHEIGHT, multiples of 8 (default: the render size)" },
        { key: "steps", type: "int32", default: 20, visible: "submission", description: "Denoising steps" },
        { key: "guidance", type: "float", default: 3.5, visible: "submission", description: "Guidance scale" },
        { key: "seed", type: "int32", default: 0, visible: "submission" },
        { key: "import_as", type: "string", default: "plane", choices: ["plane", "strip", "compositor"],
          visible: "submission", description: "How the video comes into the saved copy of the shot" },
        { key: "extra_args", type: "string", required: false, visible: "submission",
          description: "More options of the add-on's cli.py for the export, e.g. --camera Cam --retarget chain" },
    ],
};

// Task types: "blender" runs anywhere Blender is; "gpu" only where a worker has a GPU and the backend.
const EXPORT_TASK_TYPE = "blender";
const GENERATE_TASK_TYPE = "gpu";
const IMPORT_TASK_TYPE = "blender";

function compileJob(job) {
    print("Animate Anyone job submitted");
    const settings = job.settings;
    const shots = shotList(settings);
    const names = jobNames(shots);
    for (let i = 0; i < shots.length; i++) {
        authorShot(job, settings, shots[i], names[i]);
    }
}

// The submitted .blend, then the extra shots (duplicates dropped, order kept).
function shotList(settings) {
    const shots = [settings.blendfile];
    for (const part of (settings.extra_shots || "").split(";")) {
        const shot = part.trim();
        if (shot && shots.indexOf(shot) < 0) {
            shots.push(shot);
        }
    }
    for (const shot of shots) {
        if (!/\.blend$/.test(shot)) {
            throw `"${shot}" is not a .blend file; extra_shots takes .blend paths separated by ';'`;
        }
    }
    return shots;
}

// Job folder names: the file name without .blend; a name used twice gets _2, _3... (as the
// add-on's batch mode and the Ray farm name them).
function jobNames(shots) {
    const seen = {};
    return shots.map((shot) => {
        const stem = path.basename(shot).replace(/\.blend$/, "");
        seen[stem] = (seen[stem] || 0) + 1;
        return seen[stem] === 1 ? stem : `${stem}_${seen[stem]}`;
    });
}

function authorShot(job, settings, shot, name) {
    const root = settings.job_root || path.join(path.dirname(shot), "animate_jobs");
    const jobDir = path.join(root, name);
    const savedAs = path.join(path.dirname(shot), `${name}_animate.blend`);

    const exportTask = author.Task(`export-${name}`, EXPORT_TASK_TYPE);
    exportTask.addCommand(blenderCommand(shot, settings,
        ["--out", jobDir, "--export-only", "--model", settings.model].concat(generationArgs(settings))));
    job.addTask(exportTask);

    const generateTask = author.Task(`generate-${name}`, GENERATE_TASK_TYPE);
    generateTask.addCommand(author.Command("exec", {
        exe: settings.backend_python,
        args: ["-m", "animate_backend", "run", jobDir],
    }));
    generateTask.addDependency(exportTask);
    job.addTask(generateTask);

    const importTask = author.Task(`import-${name}`, IMPORT_TASK_TYPE);
    importTask.addCommand(blenderCommand(shot, settings, [
        "--out", jobDir, "--import-only", "--import", settings.import_as || "plane", "--save-as", savedAs,
    ]));
    importTask.addDependency(generateTask);
    job.addTask(importTask);
}

// `blender -b SHOT --python-exit-code 1 -P cli.py -- ARGS`: a failed step fails the task.
function blenderCommand(shot, settings, cliArgs) {
    return author.Command("blender-render", {
        exe: "{blender}",
        exeArgs: "{blenderArgs}",
        argsBefore: [],
        blendfile: shot,
        args: ["--python-exit-code", "1", "-P", settings.addon_cli, "--"].concat(cliArgs),
    });
}

function generationArgs(settings) {
    const args = ["--frames", settings.frames, "--steps", String(settings.steps),
                  "--guidance", String(settings.guidance), "--seed", String(settings.seed)];
    if (settings.size) {
        args.push("--size", settings.size);
    }
    return args.concat(splitArgs(settings.extra_args || ""));
}

// Split a command line on spaces, keeping "quoted parts" together.
function splitArgs(text) {
    const args = [];
    const pattern = /"([^"]*)"|'([^']*)'|(\S+)/g;
    let match;
    while ((match = pattern.exec(text)) !== null) {
        args.push(match[1] !== undefined ? match[1] : match[2] !== undefined ? match[2] : match[3]);
    }
    return args;
}
