"""The engines: vLLM behind Ray Data LLM and Ray Serve LLM, and every reach into their
private parts, kept in this one package.

* :mod:`~synth_empathy.engines.options` - an ``EngineConfig`` as vLLM engine arguments,
  actor environment and placement bundles (public API only);
* :mod:`~synth_empathy.engines.shared` - one Ray Serve deployment shared by the LLM stages
  that run the same engine, started early, stopped with the run;
* :mod:`~synth_empathy.engines.server` - that deployment's replica: Ray Serve LLM's
  ``LLMServer`` taking plain-dict requests, with a shorter start on the CPU;
* :mod:`~synth_empathy.engines.counters` - what the replica counts for progress lines;
* :mod:`~synth_empathy.engines.cpu_top_p` - a vLLM plugin: top-p without a vocabulary sort
  in CPU engines.

Private names used (each with its reason in :data:`synth_empathy.engines.surfaces.SURFACES`,
checked against the installed Ray and vLLM by ``tests/engines/test_surfaces.py``):
Ray Serve LLM's ``CallbackBase``, ``is_remote_path``, ``VLLMEngine._start_async_llm_engine``
and ``._engine_client``, ``push_telemetry_report_for_all_models``,
``LLMServer._start_engine`` and ``._default_engine_cls``, the ``_worker_process_setup_hook``
path; vLLM's ``OMPProcessManager.configure_omp_envs``, ``AsyncLLM.output_processor``,
``OutputProcessor.request_states``, ``IncrementalDetokenizer.num_output_tokens`` and the
CPU sampler's ``apply_top_k_top_p``. No module outside this package imports
``ray.llm._internal`` or vLLM. The few private Ray names used elsewhere (Ray core's for
quiet logs and the autoscaler's node types, Ray Data's backpressure interface, Ray
Train's placement-group callback) are listed there too: a test fails on any private
import of the package that the list lacks.
"""
